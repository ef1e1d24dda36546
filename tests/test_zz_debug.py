import os, subprocess, time
from test_consistency import combo  # noqa
from support import LiveProcess

def test_dbg(combo):
    B = combo["root"]
    with LiveProcess([combo["app"]], env={"LD_LIBRARY_PATH": str(B / "plt")}) as app:
        print(app.next_line())
        from consistency_support import ask
        for i in range(20):
            r = subprocess.run(["/work/wt/tracker/.venv/bin/ulp-trigger", str(app.pid), str(combo["plt"])], capture_output=True, text=True)
            print("apply", r.returncode, r.stderr)
            print(ask(app, "sync"))
            r = subprocess.run(["/work/wt/tracker/.venv/bin/ulp-trigger", "--revert", str(app.pid), str(combo["plt"])], capture_output=True, text=True)
            print("revert", r.returncode, r.stderr)
            if r.returncode:
                break
            print(ask(app, "sync"))

        for t in os.listdir(f"/proc/{app.pid}/task"):
            st = open(f"/proc/{app.pid}/task/{t}/stat").read().split(") ")[1].split()[0]
            print(t, st, open(f"/proc/{app.pid}/task/{t}/wchan").read(), open(f"/proc/{app.pid}/task/{t}/comm").read().strip(), open(f"/proc/{app.pid}/task/{t}/status").read().split("TracerPid:")[1].split()[0])
        out = subprocess.run(["gdb", "-p", str(app.pid), "-batch", "-ex", "thread apply all bt 6"], capture_output=True, text=True, timeout=60).stdout
        print(out[-5000:])
        assert 0
