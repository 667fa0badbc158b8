"""The suite's tasks by name, in the order the suite runs them."""

from tf_mbalign.tasks.sentence_tasks import NliTask, TopicTask
from tf_mbalign.tasks.tagging_tasks import NerTask, PosTask

TASKS = {task.name: task for task in (NliTask(), NerTask(), PosTask(), TopicTask())}
RETRIEVAL = "retrieval"

