# The sweep workflow is assembled from workflow/rules/*.smk (see README).
