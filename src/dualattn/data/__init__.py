"""dualattn.data"""
