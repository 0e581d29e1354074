"""scep"""
