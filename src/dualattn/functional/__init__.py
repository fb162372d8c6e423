"""dualattn.functional"""
