"""Small helpers every layer may use: time stamps, retry pacing, message wording. No I/O."""
