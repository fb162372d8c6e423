"""Built-in ``dualattn reproduce`` protocols and the run configs they reference (package data).

Each file here is an identical copy of the user-facing file of the same name in ``configs/``
(``tests/test_protocol.py`` checks that they stay in sync).
"""
