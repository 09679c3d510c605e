// A bounded memo for what the executor derives from a step's text (its kind,
// where its $name references stand): loop bodies and repeated workflows send
// the same texts again and again. Emptied whole when full, which is cheap and
// keeps memory bounded.
export function memoized<T>(compute: (key: string) => T, max: number): (key: string) => T {
  const seen = new Map<string, T>();
  return (key) => {
    let v = seen.get(key);
    if (v === undefined) {
      v = compute(key);
      if (seen.size >= max) seen.clear();
      seen.set(key, v);
    }
    return v;
  };
}
