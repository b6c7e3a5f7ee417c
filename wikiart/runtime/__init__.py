"""Process and cluster concerns shared by every command: device and precision defaults, rank agreement, fault points, one-line errors."""
