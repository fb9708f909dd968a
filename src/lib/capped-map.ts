/**
 * A Map that starts over when a new key would take it past `max` entries. For caches and memos
 * whose entries can always be rebuilt: losing them all at once costs a recount or a re-parse,
 * never correctness, and unlike an LRU it costs nothing per read.
 */
export class CappedMap<K, V> extends Map<K, V> {
  constructor(private readonly max: number) {
    super();
  }

  override set(key: K, value: V): this {
    if (this.size >= this.max && !this.has(key)) this.clear();
    return super.set(key, value);
  }
}
