"""The ``adapt`` command-line application."""
