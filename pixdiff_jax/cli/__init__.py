"""The command line (``python main.py``): flags, modes and one-line errors."""
