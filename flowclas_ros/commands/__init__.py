"""The ``flowclas`` command line: one module per subcommand, a leaf nothing else imports.

Each module has ``add_arguments(parser)`` and ``run(args) -> int``; it parses flags into the
typed options of a library function, calls it, and prints the result. ``main`` holds the
parser and the error policy.
"""
