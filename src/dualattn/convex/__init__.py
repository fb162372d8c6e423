"""dualattn.convex"""
