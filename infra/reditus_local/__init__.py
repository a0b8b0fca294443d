"""Local stand-ins for the outside world: the Reditus API simulator and friends."""
