//! blip2
