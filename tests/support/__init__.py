"""The one test harness: what several test modules (and bench/) need, written once.

Fixtures that wrap these live in ``tests/conftest.py``; test modules import
helpers from here, never from another test module.
"""
