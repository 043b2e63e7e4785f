"""Training: stage 1 (layer-pruned self-distillation) and stage 2 (MAC instruction tuning).

``loop`` is the shared runtime, ``checkpoint`` the resume machinery, ``teacher_cache`` the frozen
teacher and its on-disk cache, ``student`` the LoRA student shared by both stages.
"""
