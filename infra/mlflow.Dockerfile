# MLflow tracking server with the Postgres driver and S3 (MinIO) client.
FROM python:3.11-slim
# The same pins as requirements/infra.txt (what infra/local_stack.sh and `make test-infra` run).
RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.8"
EXPOSE 5000
