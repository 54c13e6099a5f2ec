"""The public task interface: `from common.task import Task, SiteInfo` (and TrainSettings, what
`Task.train` receives). See common/learning/task.py and the README section "Your own task"."""

from common.learning.task import SiteInfo, Task, TrainSettings

__all__ = ["SiteInfo", "Task", "TrainSettings"]
