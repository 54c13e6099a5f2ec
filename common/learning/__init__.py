"""Learning: the data sets and site CSVs (`data`), the models and their arrays (`models`), local
training and evaluation (`training`) and differential privacy (`dp`).

May import: `common.errors`, torch, scikit-learn, Opacus and numpy. Never Flower, and nothing of
the security packages: every security layer wraps this code unchanged.
"""
