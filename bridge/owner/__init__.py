"""The owner's side: keys and clips, run wherever the owner's identity file is."""
