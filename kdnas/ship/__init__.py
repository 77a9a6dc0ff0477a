"""Shipping steps: export a trained student (:mod:`.export`) and distil a chosen one fully
(:mod:`.final`)."""
