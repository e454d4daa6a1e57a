"""Config files of the sampling experiments (`launch.sample`)."""
