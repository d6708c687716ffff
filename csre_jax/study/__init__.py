"""Studies: the same comparison over seeds, with honest model selection and its statistics."""
