"""dualattn.nn"""
