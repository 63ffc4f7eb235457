"""`python -m handsoff_ray ...` is the `handsoff` command (what `ray job submit` runs)."""

from handsoff_ray.cli import main

if __name__ == "__main__":
    main()
