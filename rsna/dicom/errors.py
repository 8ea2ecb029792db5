"""The one exception type of the DICOM reader."""


class SeriesError(ValueError):
    """A DICOM series that cannot be turned into a volume.

    The message names the series (SeriesInstanceUID or folder), the file where one is at
    fault, the value found, the value expected and what to do. ``series`` is that name and
    ``dropped`` lists what the reader had already left out, as in :class:`Volume.dropped`,
    so that ``rsna inspect`` can show it for a rejected series too.
    """

    def __init__(self, message: str, *, series: str = "", dropped: tuple[dict, ...] = ()) -> None:
        super().__init__(message)
        self.series = series
        self.dropped = tuple(dropped)
