"""Implementations of FlashMHF that are not mhfgen's, measured beside it by `mhfgen bench`.

Each peer lives behind an optional dependency that mhfgen itself does not need: importing
this package imports none of them (helion_fwd imports Helion only when a kernel is built).
"""
