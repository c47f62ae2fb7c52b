"""Together-style legacy /inference."""
