"""Front doors from telephony (SIPREC, AudioSocket, media streams, HTTP decisions): empty
until the next issues fill it. Each front door is a sans-I/O parser plus a thin asyncio shell, and
reaches the rest of the library only through the sampler, the log and the vault."""
