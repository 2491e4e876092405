# Model check of the chained fa3 kernel's barrier protocol (native/src/attention/prefill_sm90.cuh): the
# loader and the two consumer warpgroups as coroutines under random interleavings, on random item
# lists (empty items, items whose rows leave consumer 1 idle). Checks: no deadlock, no buffer
# overwritten while a consumer reads it, every read sees the tile / item it expects, turn barriers
# balanced, every item finished once per consumer with rows. Mutations (a missing wait, a V
# released at issue, the idle consumer not flushing its pending item) fail it.   python3 scripts/fa3_protocol_model.py
import random, sys
KS, VS = 2, 3
QB = 2  # Q buffers: 2, or 1 at head dim 256 (the loop at the end runs both)

class Bar:
    def __init__(s, need): s.need, s.ph, s.arr = need, 0, 0
    def arrive(s):
        s.arr += 1
        assert s.arr <= s.need
        if s.arr == s.need: s.ph += 1; s.arr = 0
    def done(s, parity): return (s.ph & 1) != parity

def run(items, seed):
    rnd = random.Random(seed)
    qf = [Bar(1), Bar(1)]; qe = [Bar(2), Bar(2)]
    kf = [Bar(1) for _ in range(KS)]; ke = [Bar(2) for _ in range(KS)]
    vf = [Bar(1) for _ in range(VS)]; ve = [Bar(2) for _ in range(VS)]
    qbuf = [None, None]; kbuf = [None] * KS; vbuf = [None] * VS
    readers = {}  # (kind, idx) -> set of consumers reading
    named = {1: 0, 2: 0}  # pending arrivals on named barriers (turns)
    log = []
    def write(kind, idx, buf, val):
        assert not readers.get((kind, idx)), f"overwrite of {kind}{idx} while read by {readers[(kind, idx)]} ({log[-5:]})"
        buf[idx] = val
    def read_begin(kind, idx, buf, c, expect):
        assert buf[idx] == expect, f"consumer {c} expected {expect} in {kind}{idx}, found {buf[idx]}"
        readers.setdefault((kind, idx), set()).add(c)
    def read_end(kind, idx, c): readers[(kind, idx)].discard(c)
    def wait(pred):
        while not pred(): yield
    def loader():
        k = 0
        for cnt, (nt, rows) in enumerate(items):
            if nt == 0:
                b = cnt % QB
                yield from wait(lambda: qe[b].done(((cnt // QB) & 1) ^ 1)); write('q', b, qbuf, cnt); qf[b].arrive()
            for tile in range(nt):
                ks, vs = k % KS, k % VS
                yield from wait(lambda: ke[ks].done(((k // KS) & 1) ^ 1)); write('k', ks, kbuf, k); kf[ks].arrive(); yield
                yield from wait(lambda: ve[vs].done(((k // VS) & 1) ^ 1)); write('v', vs, vbuf, k); vf[vs].arrive(); yield
                if tile == 0:
                    b = cnt % QB
                    yield from wait(lambda: qe[b].done(((cnt // QB) & 1) ^ 1)); write('q', b, qbuf, cnt); qf[b].arrive()
                k += 1
    def consumer(c):
        my, other = 1 + c, 2 - c
        if c == 1: named[1] += 1
        st = {'k': 0, 'pending': None, 'pa': None}  # pa: the tile whose P V is owed
        def turn():
            yield from wait(lambda: named[my] > 0); named[my] -= 1; yield
            named[other] += 1
        def flush():
            if st['pending'] is None: return
            k = st['k']; vs = (k - 1) % VS
            yield from wait(lambda: vf[vs].done(((k - 1) // VS) & 1))
            read_begin('v', vs, vbuf, c, k - 1); yield
            read_end('v', vs, c); ve[vs].arrive()
            log.append((c, 'finish', st['pending'])); st['pending'] = None
        for cnt, (nt, rows) in enumerate(items):
            qb = cnt % QB
            if c == 1 and rows <= 64:
                yield from flush()
                yield from wait(lambda: qf[qb].done((cnt // QB) & 1))
                for tile in range(nt):
                    k = st['k']
                    yield from wait(lambda: kf[k % KS].done((k // KS) & 1))
                    yield from wait(lambda: vf[k % VS].done((k // VS) & 1))
                    yield from turn()
                    ke[k % KS].arrive(); ve[k % VS].arrive(); st['k'] += 1
                qe[qb].arrive(); continue
            yield from wait(lambda: qf[qb].done((cnt // QB) & 1))
            if nt == 0:
                qe[qb].arrive(); yield from flush(); log.append((c, 'finish', cnt)); continue
            for tile in range(nt):
                k = st['k']; ks, pvs = k % KS, (k - 1) % VS
                mode = 1 if tile > 0 else (2 if st['pending'] is not None else 0)
                yield from wait(lambda: kf[ks].done((k // KS) & 1))
                if mode: yield from wait(lambda: vf[pvs].done(((k - 1) // VS) & 1))
                yield from turn()
                read_begin('q', qb, qbuf, c, cnt); read_begin('k', ks, kbuf, c, k)
                if mode: read_begin('v', pvs, vbuf, c, k - 1)
                yield  # Q K^T (+ P V) in flight
                read_end('k', ks, c); ke[ks].arrive()
                if tile + 1 == nt: read_end('q', qb, c); qe[qb].arrive()
                yield  # softmax
                if mode: read_end('v', pvs, c); ve[pvs].arrive()
                if mode == 2: log.append((c, 'finish', st['pending'])); st['pending'] = None
                st['k'] += 1
            st['pending'] = cnt
        yield from flush()
        if c == 0: yield from wait(lambda: named[1] > 0); named[1] -= 1
    actors = [loader(), consumer(0), consumer(1)]
    alive = [True] * 3
    stuck = 0
    while any(alive):
        i = rnd.choice([j for j in range(3) if alive[j]])
        try:
            next(actors[i])
        except StopIteration:
            alive[i] = False
        stuck = stuck + 1
        if stuck > 200000: raise AssertionError(f"deadlock? alive {alive}")
    assert named[1] == 0 and named[2] == 0, named
    fin = sorted(x for x in log if x[1] == 'finish')
    want = sorted([(0, 'finish', i) for i in range(len(items))] + [(1, 'finish', i) for i, (nt, rows) in enumerate(items) if rows > 64])
    assert fin == want, (fin, want)

for QB in (2, 1):
    for trial in range(3000):
        r = random.Random(trial)
        items = [(r.choice([0, 1, 1, 2, 3, 5]), r.choice([4, 64, 100, 128])) for _ in range(r.randint(1, 9))]
        run(items, trial)
    print(f"ok ({QB} Q buffers): 3000 random item lists and interleavings")
