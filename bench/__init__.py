"""Load generator, baseline server and report for robogpt-video (``make bench``)."""
