"""Shipping steps: export a trained student (:mod:`.export`), distil a chosen one fully
(:mod:`.final`) and train a teacher (:mod:`.teacher_train`)."""
