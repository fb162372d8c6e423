"""dualattn.bench"""
