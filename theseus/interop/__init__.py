"""Moving weights between theseus models and other ecosystems."""

from theseus.interop.huggingface import (
    export_hf,
    hf_config_to_transformer,
    import_hf,
    load_hf_weights,
    preset_for_hf,
)

__all__ = ["export_hf", "hf_config_to_transformer", "import_hf", "load_hf_weights", "preset_for_hf"]
