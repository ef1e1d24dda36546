"""placeholder"""
def run(cycles, rounds, threads):
    return {}
