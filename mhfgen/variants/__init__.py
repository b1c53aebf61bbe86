"""The kernel variants, one module per name stem (see mhfgen.registry).

Each public module here subclasses mhfgen.registry.Variant and registers one instance;
the registry imports every module of this package whose name does not start with '_'
on its first lookup. _triton holds what the Triton-language variants share.
"""
