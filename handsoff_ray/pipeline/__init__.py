"""Stage runners, storage and Ray orchestration."""
