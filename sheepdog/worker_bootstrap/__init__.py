"""The program an array task runs on a node.

It needs a Python interpreter and the broker, nothing of the submitter: it
imports ``sheepdog.broker`` and ``sheepdog.errors`` only.
"""
