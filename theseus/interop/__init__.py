"""Moving weights between theseus models and other ecosystems."""

from theseus.interop.huggingface import export_hf, import_hf

__all__ = ["export_hf", "import_hf"]
