"""The search: prepare teacher and data (:mod:`.prepare`), propose candidates within budget
(:mod:`.sampler`), keep the study (:mod:`.storage`), train the references
(:mod:`.references`) and run the loop (:mod:`.loop`)."""
