"""The suite's tasks by name, in the order the suite runs them.

`nli`, `ner`, `pos` and `topic` run by default (with retrieval, which the
suite runs itself: `suite.DEFAULT_TASKS`); `xnli_mini` and `mlqa`, the
XNLI-mini and MLQA-mini protocols, are optional (`suite.OPTIONAL_TASKS`):
they run only when `--tasks` names them.
"""

from tf_mbalign.tasks.mlqa import MlqaTask
from tf_mbalign.tasks.sentence_tasks import NliTask, TopicTask
from tf_mbalign.tasks.tagging_tasks import NerTask, PosTask
from tf_mbalign.tasks.xnli import XnliMiniTask

TASKS = {task.name: task for task in (NliTask(), NerTask(), PosTask(), TopicTask(),
                                      XnliMiniTask(), MlqaTask())}
