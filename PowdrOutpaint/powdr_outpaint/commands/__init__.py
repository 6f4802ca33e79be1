"""The ``powdr-outpaint`` command line: one module per sub-command, started by
:mod:`powdr_outpaint.commands.cli`."""
