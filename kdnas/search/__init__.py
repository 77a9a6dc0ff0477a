"""The search: propose candidates within budget (:mod:`.sampler`), count their cost
(:mod:`.costs`), keep the study (:mod:`.storage`, :mod:`.patient_storage`), train the
references (:mod:`.references`), run the loop (:mod:`.loop`, with :mod:`.watchdog` and
:mod:`.events`), promote up the rungs (:mod:`.rungs` by the rule of :mod:`.promotion`) and
measure the knee's seed noise (:mod:`.noise`). The teacher and data are prepared by
:mod:`kdnas.teacher.prepare`."""
