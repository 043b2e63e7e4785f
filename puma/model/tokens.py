"""PUMA's retrieval token, the one string every model module agrees on (no torch, no transformers)."""

RET_TOKEN = "[RET]"  # default of params model.ret_token; the tiny tokenizer has it built in
