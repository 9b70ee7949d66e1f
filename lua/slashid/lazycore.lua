-- slashid.lazycore: the C core, loaded on first use (see slashid.lazy).
return require("slashid.lazy")("slashid.core")
