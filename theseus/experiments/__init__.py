"""The registered jobs (`theseus jobs` lists them), among them pretraining from scratch
(`pretrain.py`) and fine-tuning from Hugging Face weights, fully or with LoRA (`finetune.py`)."""
