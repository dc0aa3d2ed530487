"""Detection: motion gate, detector plugins, tracker, zones."""
