"""Learning: the task interface (`task`; public as `common.task`), the built-in tasks (`tasks`) and
how a run names its task (`task_spec`), the data sets and site CSVs (`data`), the models and their
arrays (`models`), local training and evaluation loops (`training`) and differential privacy (`dp`).

May import: `common.errors`, `common.wire` (node-config key names), torch, scikit-learn, Opacus and
numpy. Never Flower, and nothing of the security packages: every security layer wraps this code
unchanged.
"""
