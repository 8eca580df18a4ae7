package sumcache

// The listings look both parts up at once (Get); the tests ask for one
// part at a time, each counted alone.

// Sum is the content hash recorded for the regular file in state s.
func (c *Cache) Sum(s Stamp) (uint64, bool) {
	k := c.lookup(s, hasSum)
	return k.Sum, k.HasSum
}

// Xattrs is the attribute digest recorded for the inode in state s.
func (c *Cache) Xattrs(s Stamp) (uint64, bool) {
	k := c.lookup(s, hasXattrs)
	return k.Xattrs, k.HasXattrs
}
