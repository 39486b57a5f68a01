"""What a person reads: terminal progress, plots (the `plot` extra), the generated architecture page."""
