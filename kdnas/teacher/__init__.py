"""Teachers, the study's input: loading every supported format (:mod:`.load`), checking a
teacher against the data with its stage taps (:mod:`.check`), preparing a study's teacher and
data (:mod:`.prepare`) and training a teacher (:mod:`.train`, ``kdnas teacher train``)."""

from kdnas.teacher.check import attach_to_data, select_taps
from kdnas.teacher.load import Teacher, file_digest, load_teacher, save_checkpoint
from search_spaces.stages import find_stage_taps

__all__ = ["Teacher", "attach_to_data", "file_digest", "find_stage_taps", "load_teacher",
           "save_checkpoint", "select_taps"]
