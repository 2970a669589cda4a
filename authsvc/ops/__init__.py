"""Operating the service: logging set-up (metrics and checks come later)."""
