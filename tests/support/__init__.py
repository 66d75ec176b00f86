"""Test support shared by the suites; never part of the installed product."""
